/* Hex output on COM1 for the test guests (needs lib.S's putc): puthex4/8/16/32 print the
 * low nibble/byte/word/dword of %eax, preserving every register. */
	.text
puthex4:
	push %eax
	and $0xf, %al
	add $'0', %al
	cmp $'9', %al
	jbe 1f
	add $('a' - '0' - 10), %al
1:	call putc
	pop %eax
	ret
puthex8:
	push %eax
	shr $4, %al
	call puthex4
	pop %eax
	jmp puthex4
puthex16:
	push %eax
	shr $8, %eax
	call puthex8
	pop %eax
	jmp puthex8
puthex32:
	push %eax
	shr $16, %eax
	call puthex16
	pop %eax
	jmp puthex16
