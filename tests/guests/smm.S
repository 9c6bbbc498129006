/*
 * smm.S: a tiny system ROM that checks System Management Mode on the Q35 platform
 * (boot with --bios and --smm; under QEMU -M q35,smm=on -bios). It runs in real mode from
 * the reset vector and prints, on COM1:
 *
 *   SMM TEST
 *   TSEG open=0000cafe          the top 16 MiB of 256 MiB, before TSEG is on: plain RAM
 *   SMI apm=00000011 tseg=0000cafe  from the handler at SMBASE+0x8000 (0x38000), in SMM
 *   BACK count=00000001         after RSM, the handler's count in RAM
 *   SMRAM=0000001a ESMRAMC=0000003f  after T_EN, G_SMRAME and D_LCK
 *   TSEG hidden=ffffffff        code outside SMM no longer sees TSEG (its write is lost)
 *   SMI apm=00000022 tseg=0000beef  SMM still sees TSEG, with the handler's first write
 *   BACK count=00000002
 *   TSEG locked=ffffffff        clearing G_SMRAME and T_EN after D_LCK changes nothing
 *   BACK count=00000002         GBL_SMI_EN clear: the 0xB2 write raises no SMI (QEMU's
 *                               ICH9 checks APMC_EN alone: it counts 3 after a third SMI)
 *   DONE
 *
 * then powers off through PM1a_CNT (SLP_TYP 5 | SLP_EN; QEMU is killed at DONE).
 * Memory: the stack at 0x7000, the handler's count at 0x500, TSEG's first dword at
 * 0x0f000000 (EXT_TSEG_MB's 16 MiB at the top of 256 MiB of RAM). Data accesses above
 * 1 MiB go through DS loaded in protected mode with a 4 GiB limit ("unreal mode").
 */
	.code16
	.text

#define COM1 0x3f8
#define PMBASE 0x600
#define TSEG 0x0f000000
#define COUNT 0x500
#define SMI_HANDLER 0x38000
/* 00:1f.0 (ICH9 LPC) and 00:00.0 (MCH) configuration addresses */
#define LPC 0x8000f800
#define MCH 0x80000000

/* Writes byte \val to configuration register \reg of the function at \addr. */
.macro cfgb addr, reg, val
	mov $(\addr | (\reg & 0xfc)), %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $(0xcfc + (\reg & 3)), %dx
	mov $\val, %al
	out %al, %dx
.endm

.macro print msg
	mov $\msg, %si
	call puts
.endm

start:
	cli
	xor %ax, %ax
	mov %ax, %ss
	mov $0x7000, %sp
	print m_start

	/* Copy the SMI handler to SMBASE + 0x8000. */
	mov $(SMI_HANDLER >> 4), %ax
	mov %ax, %es
	xor %di, %di
	mov $smi_handler, %si
	mov $(smi_end - smi_handler), %cx
	cld
	rep movsb %cs:(%si), %es:(%di)

	/* Unreal mode: DS keeps a flat 4 GiB descriptor after PE is cleared. */
	lgdtl %cs:gdt_desc
	mov %cr0, %eax
	or $1, %al
	mov %eax, %cr0
	mov $8, %bx
	mov %bx, %ds
	and $0xfe, %al
	mov %eax, %cr0

	movl $0, COUNT
	mov $TSEG, %ebx
	addr32 movl $0xcafe, (%ebx)
	print m_open
	addr32 mov (%ebx), %eax
	call hex32
	call newline

	/* The PM block at 0x600 (PMBASE, ACPI_EN), SMI_EN = GBL_SMI_EN | APMC_EN. */
	mov $(LPC | 0x40), %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	mov $(PMBASE | 1), %eax
	out %eax, %dx
	cfgb LPC, 0x44, 0x80
	mov $(PMBASE + 0x30), %dx
	mov $0x21, %eax
	out %eax, %dx

	mov $0x11, %al
	out %al, $0xb2
	call back

	/* TSEG on (T_EN, size from EXT_TSEG_MB), SMRAM on, then locked. */
	cfgb MCH, 0x9e, 0x07
	cfgb MCH, 0x9d, 0x0a
	cfgb MCH, 0x9d, 0x1a
	print m_smram
	mov $(MCH | 0x9c), %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfd, %dx
	in %dx, %al
	movzbl %al, %eax
	call hex32
	print m_esmramc
	mov $0xcfe, %dx
	in %dx, %al
	movzbl %al, %eax
	call hex32
	call newline

	print m_hidden
	mov $TSEG, %ebx
	addr32 mov (%ebx), %eax
	call hex32
	call newline
	addr32 movl $0x1111, (%ebx)

	mov $0x22, %al
	out %al, $0xb2
	call back

	/* Locked: these writes must not show TSEG again. */
	cfgb MCH, 0x9d, 0x02
	cfgb MCH, 0x9e, 0x00
	print m_locked
	mov $TSEG, %ebx
	addr32 invlpg (%ebx)
	addr32 mov (%ebx), %eax
	call hex32
	call newline

	/* GBL_SMI_EN clear: APM writes raise nothing. */
	mov $(PMBASE + 0x30), %dx
	mov $0x20, %eax
	out %eax, %dx
	mov $0x33, %al
	out %al, $0xb2
	call back

	print m_done
	mov $(PMBASE + 4), %dx
	mov $((5 << 10) | (1 << 13)), %ax
	out %ax, %dx
1:	hlt
	jmp 1b

/* Prints "BACK count=" and the handler's count. */
back:
	print m_back
	movl COUNT, %eax
	call hex32
	jmp newline

newline:
	mov $'\n', %al
	mov $COM1, %dx
	out %al, %dx
	ret

/* Prints the NUL-terminated string at %cs:%si. */
puts:
	mov $COM1, %dx
1:	lodsb %cs:(%si), %al
	test %al, %al
	jz 2f
	out %al, %dx
	jmp 1b
2:	ret

/* Prints %eax as 8 hex digits. */
hex32:
	mov $COM1, %dx
	mov $8, %cx
1:	rol $4, %eax
	push %eax
	and $0xf, %al
	add $'0', %al
	cmp $'9', %al
	jbe 2f
	add $('a' - '0' - 10), %al
2:	out %al, %dx
	pop %eax
	loop 1b
	ret

m_start:	.asciz "SMM TEST\n"
m_open:		.asciz "TSEG open="
m_smram:	.asciz "SMRAM="
m_esmramc:	.asciz " ESMRAMC="
m_hidden:	.asciz "TSEG hidden="
m_locked:	.asciz "TSEG locked="
m_back:		.asciz "BACK count="
m_done:		.asciz "DONE\n"

	.p2align 3
gdt:
	.quad 0
	.quad 0x00cf92000000ffff	/* 8: flat 4 GiB data */
gdt_desc:
	.word gdt_desc - gdt - 1
	.long 0xf0000 + gdt

/*
 * The SMI handler, copied to 0x38000 and entered at CS = 0x3000, IP = 0x8000 with flat
 * 4 GiB data segments (base 0). Self-contained: nothing outside SMRAM's copy is called, and
 * its strings are addressed through CS at their offset in the copy.
 */
#define H(label) (0x8000 + (label - smi_handler))
smi_handler:
	mov $COM1, %dx
	mov $H(h_apm), %si
	call h_puts
	in $0xb2, %al
	movzbl %al, %eax
	call h_hex32
	mov $H(h_tseg), %si
	call h_puts
	mov $TSEG, %ebx
	/* QEMU's TCG keeps an address translation made outside SMM across the SMI; the
	   hardware (and KVM) have nothing to drop, so this is a no-op there. */
	addr32 invlpg (%ebx)
	addr32 mov (%ebx), %eax
	call h_hex32
	mov $'\n', %al
	out %al, %dx
	addr32 movl $0xbeef, (%ebx)
	addr32 incl COUNT
	rsm

h_puts:
1:	lodsb %cs:(%si), %al
	test %al, %al
	jz 2f
	out %al, %dx
	jmp 1b
2:	ret

h_hex32:
	mov $8, %cx
1:	rol $4, %eax
	push %eax
	and $0xf, %al
	add $'0', %al
	cmp $'9', %al
	jbe 2f
	add $('a' - '0' - 10), %al
2:	out %al, %dx
	pop %eax
	loop 1b
	ret

h_apm:	.asciz "SMI apm="
h_tseg:	.asciz " tseg="
smi_end:

	/* The reset vector: 16 bytes below the end. */
	.org 0xfff0
	ljmp $0xf000, $start
	.org 0x10000
