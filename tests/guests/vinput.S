/* virtio-input guest: drives the first virtio-input device (1af4:1052: the helper's
 * keyboard) and the PS/2 mouse, and echoes what arrives on COM1:
 * "vin TTTT CCCC VVVVVVVV" for each virtio event (type, code, value in hex) and
 * "aux XX" for each byte from the i8042 (the tablet's driver is not started, so pointer
 * input still goes to PS/2). Prints "vinput ready" once both are set up. */
#include "pvh_note.S"

#define QSIZE		8

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	cld
	mov $0x10521af4, %eax
	mov $s_novin, %esi
	call find_device
	call find_caps
	call init_device
	/* Post QSIZE 8-byte device-writable buffers on the event queue. */
	mov $ring0, %edi
	xor %ecx, %ecx
3:	mov %ecx, %eax
	shl $3, %eax
	add $events, %eax
	mov %ecx, %edx
	shl $4, %edx
	mov %eax, (%edi,%edx)
	movl $0, 4(%edi,%edx)
	movl $8, 8(%edi,%edx)
	movw $2, 12(%edi,%edx)		/* WRITE */
	movw %cx, 0x104(%edi,%ecx,2)
	inc %ecx
	cmp $QSIZE, %ecx
	jb 3b
	movw $QSIZE, 0x102(%edi)
	mov q0_notify, %edx
	movw $0, (%edx)
	call ps2_setup
	mov $s_ready, %esi
	call puts

poll:
	mov $ring0, %edi
	movzwl 0x202(%edi), %eax	/* used idx */
	cmp %ax, seen
	jne event
	in $0x64, %al
	test $1, %al
	jz poll
	mov %al, %bl
	in $0x60, %al
	test $0x20, %bl
	jz poll				/* keyboard bytes are not expected here */
	mov $s_aux, %esi
	call puts
	call puthex8
	mov $'\n', %al
	call putc
	jmp poll

event:
	movzwl seen, %ecx
	and $(QSIZE - 1), %ecx
	mov 0x204(%edi,%ecx,8), %ebx	/* used ring[i].id */
	lea events(,%ebx,8), %esi
	push %esi
	mov $s_vin, %esi
	call puts
	pop %esi
	movzwl (%esi), %eax
	call puthex16
	mov $' ', %al
	call putc
	movzwl 2(%esi), %eax
	call puthex16
	mov $' ', %al
	call putc
	mov 4(%esi), %eax
	call puthex32
	mov $'\n', %al
	call putc
	incw seen
	/* Give the buffer back. */
	movzwl 0x102(%edi), %eax
	mov %eax, %ecx
	and $(QSIZE - 1), %ecx
	mov %bx, 0x104(%edi,%ecx,2)
	inc %eax
	mov %ax, 0x102(%edi)
	mov q0_notify, %edx
	movw $0, (%edx)
	jmp poll

/* fail: "vinput failed: " + %esi, then stop. */
fail:
	push %esi
	mov $s_failed, %esi
	call puts
	pop %esi
	call puts
	mov $'\n', %al
	call putc
1:	cli
	hlt
	jmp 1b

#include "hex.S"
#include "ps2.S"
#include "virtio_drv.S"
#include "lib.S"

	.section .rodata
s_novin:		.asciz "no virtio-input"
s_failed:	.asciz "vinput failed: "
s_ready:	.asciz "vinput ready\n"
s_vin:		.asciz "vin "
s_aux:		.asciz "aux "

	.data
	.align 4
seen:		.long 0

	.bss
	.align 4096
ring0:		.space 4096
ring1:		.space 4096
events:		.space QSIZE * 8
	.align 16
	.space 4096
stack_top:
