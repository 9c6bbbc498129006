/* Benchmark guest for scripts/bench-app.sh (not shipped in the app): finds the std-VGA
 * adapter, sets 1920x1080x32 and then repaints the whole screen in a new colour as fast
 * as it can, one rep stosl per frame, forever. */
#define WIDTH	1920
#define HEIGHT	1080

	.section .note.pvh, "a"
	.align 4
	.long 4
	.long 4
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.align 4
	.long _start

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	cld
	xor %ebx, %ebx
1:	mov %ebx, %eax			/* config address of bus 0, slot %ebx */
	shl $11, %eax
	or $0x80000000, %eax
	mov %eax, %esi
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	cmp $0x11111234, %eax
	je 2f
	inc %ebx
	cmp $32, %ebx
	jb 1b
3:	pause				/* no adapter: nothing to draw */
	jmp 3b

2:	lea 0x10(%esi), %eax		/* BAR0 */
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	and $0xfffffff0, %eax
	mov %eax, %ebp
	lea 0x04(%esi), %eax		/* command: memory decoding on */
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	or $0x2, %eax
	out %eax, %dx

	mov $4, %ax			/* DISPI: disable, mode, enable with LFB */
	xor %cx, %cx
	call dispi
	mov $1, %ax
	mov $WIDTH, %cx
	call dispi
	mov $2, %ax
	mov $HEIGHT, %cx
	call dispi
	mov $3, %ax
	mov $32, %cx
	call dispi
	mov $4, %ax
	mov $0x41, %cx
	call dispi

	mov $0x00102030, %ebx
4:	mov %ebp, %edi
	mov %ebx, %eax
	mov $(WIDTH * HEIGHT), %ecx
	rep stosl
	add $0x00050301, %ebx
	and $0x00ffffff, %ebx
	jmp 4b

/* dispi: DISPI register %ax = %cx. */
dispi:
	mov $0x1ce, %dx
	out %ax, %dx
	mov %cx, %ax
	mov $0x1cf, %dx
	out %ax, %dx
	ret

	.bss
	.align 16
	.space 1024
stack_top:
